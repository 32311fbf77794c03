"""Config mistakes that surface while building: the TypeError Python raises for a misspelt
or missing constructor key, and mmengine's KeyError for a ``type`` no registry has, turned
into a :class:`ddetr.errors.ConfigError` that names the key and the nearest valid name.
"""
import contextlib
import re

from ddetr.errors import ConfigError

_UNEXPECTED = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")
_UNREGISTERED = re.compile(r"^(\w+) is not in the (\w+::)?(.+?) registry")
_MISSING = re.compile(r'(\w+)\.__init__\(\) missing \d+ required (?:positional |keyword-only )?'
                      r'arguments?: (.+)$')


def _find_class(err: BaseException, class_name: str):
    """The class called ``class_name`` whose call raised ``err``: looked up in the frames
    of its traceback, innermost first (the caller's locals, as the registry's ``obj_cls``,
    then its module's globals), following the exceptions ``err`` was raised from (mmengine's
    registry re-raises a build error as a new one); ddetr's modules, then mmdet's and
    others' as a last resort (class names repeat: mmdet has its own encoder layers)."""
    import inspect
    import sys
    import traceback
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
        for frame in reversed(frames):
            for candidate in list(frame.f_locals.values()) + [frame.f_globals.get(class_name)]:
                if inspect.isclass(candidate) and candidate.__name__ == class_name:
                    return candidate
        err = err.__cause__ or err.__context__
    for prefix in ('ddetr', 'mmdet', 'mmcv', 'mmengine', 'torch'):
        for name, module in list(sys.modules.items()):
            if name.split('.')[0] == prefix:
                candidate = getattr(module, class_name, None)
                if inspect.isclass(candidate):
                    return candidate
    return None


def _init_parameters(err: BaseException, class_name: str):
    """The names ``__init__`` of the class ``class_name`` takes, or None if not found."""
    import inspect
    cls = _find_class(err, class_name)
    if cls is None:
        return None
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    return [name for name, param in params.items() if name != 'self'
            and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)]


def unregistered_type_error(name: str, registry) -> 'ConfigError':
    """The :class:`ConfigError` for a config's ``type`` ``name`` that ``registry`` (an
    mmengine Registry) and its parents (mmdet's, mmengine's) do not have, with the nearest
    registered name."""
    import difflib
    names = set()
    scope = registry
    while scope is not None:
        names.update(scope.module_dict)
        scope = scope.parent
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return ConfigError(f'the config names type {name!r}, which is not in the {registry.name} '
                       f'registry' + (f' (did you mean {close[0]!r}?)' if close else ''))


def _failing_registry(err: BaseException):
    """The registry whose build raised ``err``: the ``registry`` local of mmengine's
    ``build_from_cfg`` in the traceback, or None."""
    import traceback

    from mmengine.registry import Registry
    for frame, _ in reversed(list(traceback.walk_tb(err.__traceback__))):
        registry = frame.f_locals.get('registry')
        if isinstance(registry, Registry):
            return registry
    return None


def explain_build_error(err: BaseException):
    """A :class:`ConfigError` for a config mistake that building raised: the TypeError
    Python raises when a config key is misspelt or missing (which key, with the nearest
    accepted names: "did you mean"), or mmengine's KeyError for a ``type`` that is in no
    registry (with the nearest registered name). None for any other error (a bug, not a
    config mistake, which keeps its traceback)."""
    import difflib
    if isinstance(err, KeyError):
        unregistered = _UNREGISTERED.search(str(err.args[0]) if err.args else '')
        if not unregistered:
            return None
        name, _, registry_name = unregistered.groups()
        registry = _failing_registry(err)
        if registry is not None:
            return unregistered_type_error(name, registry)
        return ConfigError(f'the config names type {name!r}, which is not in the '
                           f'{registry_name} registry')
    if not isinstance(err, TypeError):
        return None
    message = str(err)
    unexpected, missing = _UNEXPECTED.search(message), _MISSING.search(message)
    if unexpected:
        class_name, key = unexpected.groups()
        accepted = _init_parameters(err, class_name)
        text = f'the config gives {class_name} a key it does not take: {key!r}'
        if accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            text += f" (did you mean {close[0]!r}?)" if close else ''
            text += f'; {class_name} takes: {", ".join(accepted)}'
        return ConfigError(text)
    if missing:
        class_name, keys = missing.groups()
        return ConfigError(f'the config does not set {keys} for {class_name}, which needs it')
    return None


@contextlib.contextmanager
def config_errors_named():
    """Around building from a config: a misspelt or missing key, or an unregistered
    ``type``, leaves as the :class:`ConfigError` of :func:`explain_build_error` (no
    traceback through the constructors); any other TypeError or KeyError is re-raised as
    it is."""
    try:
        yield
    except (TypeError, KeyError) as err:
        config_error = explain_build_error(err)
        if config_error is None:
            raise
        raise config_error from None
