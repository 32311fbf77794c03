"""The documentation's relative links resolve and the README stays a page.

Every markdown link and image link in README.md, configs/README.md and docs/**/*.md that
is not a URL must name an existing file or folder; an anchor after '#' must match a
heading of the target page (GitHub's heading ids). Links inside code (fenced blocks and
inline code spans) are text, not links, and are not checked.
"""
import glob
import os.path as osp
import re
import unicodedata
from typing import List, Set, Tuple

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
README_MAX_LINES = 300

PAGES = sorted({osp.join(ROOT, 'README.md'), osp.join(ROOT, 'configs', 'README.md'),
                *glob.glob(osp.join(ROOT, 'docs', '**', '*.md'), recursive=True)})

FENCE = re.compile(r'^\s*(```|~~~)')
CODE_SPAN = re.compile(r'(`+)(?:(?!\1).)+?\1')
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title"
# follows) or at the closing parenthesis
INLINE_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
REFERENCE_DEF = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$')
HEADING = re.compile(r'^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
EXTERNAL = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*:')  # http:, https:, mailto: ...


def prose_lines(text: str, strip_code: bool = True) -> List[Tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans removed
    unless ``strip_code`` is False."""
    lines, in_fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence:
            if in_fence is None:
                in_fence = fence.group(1)
            elif fence.group(1) == in_fence:
                in_fence = None
            continue
        if in_fence is None:
            lines.append((number, CODE_SPAN.sub('', line) if strip_code else line))
    return lines


def links(path: str) -> List[Tuple[int, str]]:
    """(line number, target) of every link and image of a markdown file."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    lines = prose_lines(text)
    # matched over the joined prose, so a link whose text wraps onto the next line counts
    prose = '\n'.join(line for _, line in lines)
    starts = [0]
    for _, line in lines:
        starts.append(starts[-1] + len(line) + 1)
    found = []
    for m in INLINE_LINK.finditer(prose):
        index = sum(1 for start in starts[1:] if start <= m.start())
        found.append((lines[index][0], m.group(1)))
    for number, line in lines:
        ref = REFERENCE_DEF.match(line)
        if ref:
            found.append((number, ref.group(1)))
    return found


def heading_id(title: str) -> str:
    """GitHub's id for a heading: markup removed, lower case, punctuation dropped (letters,
    digits, '-', '_' and spaces kept), spaces -> '-'."""
    title = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', title)  # a link: its text
    title = title.replace('`', '').replace('*', '')
    kept = ''.join(c for c in title.lower()
                   if c in ' -_' or unicodedata.category(c)[0] in 'LN')
    return kept.replace(' ', '-')


def anchors(path: str) -> Set[str]:
    """The heading ids of a markdown file, with GitHub's -1, -2 ... for repeated ones."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    ids, seen = set(), {}
    for _, line in prose_lines(text, strip_code=False):
        m = HEADING.match(line)
        if not m:
            continue
        base = heading_id(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.add(base if count == 0 else f'{base}-{count}')
    return ids


def broken_links(path: str) -> List[str]:
    problems = []
    for number, target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition('#')
        where = f'{osp.relpath(path, ROOT)}:{number}: {target}'
        resolved = osp.normpath(osp.join(osp.dirname(path), file_part)) if file_part else path
        if not osp.exists(resolved):
            problems.append(f'{where} (no file {osp.relpath(resolved, ROOT)})')
        elif anchor and resolved.endswith('.md') and anchor not in anchors(resolved):
            problems.append(f'{where} (no heading #{anchor} in {osp.relpath(resolved, ROOT)})')
    return problems


def test_pages_found():
    assert osp.join(ROOT, 'README.md') in PAGES
    assert any(p.startswith(osp.join(ROOT, 'docs') + osp.sep) for p in PAGES)


@pytest.mark.parametrize('page', PAGES, ids=lambda p: osp.relpath(p, ROOT))
def test_relative_links_resolve(page):
    problems = broken_links(page)
    assert not problems, 'broken links:\n' + '\n'.join(problems)


def test_readme_is_a_page():
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        count = len(f.read().splitlines())
    assert count <= README_MAX_LINES, (
        f'README.md has {count} lines (at most {README_MAX_LINES}): move details to docs/')


def test_link_parsing():
    """The checker itself: code is not a link, anchors follow GitHub's ids."""
    text = ('see [a](x.md#b) and ![img](fig.png "title"), not `[c](y.md)`\n'
            '```\n[d](z.md)\n```\n'
            '[ref]: r.md\n')
    lines = prose_lines(text)
    found = [m.group(1) for _, line in lines for m in INLINE_LINK.finditer(line)]
    assert found == ['x.md#b', 'fig.png']
    assert REFERENCE_DEF.match(lines[-1][1]).group(1) == 'r.md'
    assert heading_id("The paper's Tables 1–2 and Figure 3") == 'the-papers-tables-12-and-figure-3'
    assert heading_id('Keeping freed memory: `DDETR_KEEP_FREED_MEMORY`') == \
        'keeping-freed-memory-ddetr_keep_freed_memory'


def test_wrapped_link_found(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('# Top\n\ntext with a [link whose text\nwraps](other.md#top) here\n')
    assert links(str(page)) == [(3, 'other.md#top')]
    (tmp_path / 'other.md').write_text('# Top\n')
    assert broken_links(str(page)) == []
    (tmp_path / 'other.md').write_text('# Elsewhere\n')
    assert len(broken_links(str(page))) == 1
