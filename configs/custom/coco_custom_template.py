# Your own COCO-format dataset: copy this file, change the names, train with
#   python tools/train.py configs/custom/my_data.py
# The names below are read by ddetr (ddetr/config/custom_data.py) and written into the
# train/val/test dataloaders and evaluators; model.bbox_head.num_classes = len(classes).
# Check the data first: python tools/misc/check_dataset.py ANN_FILE IMG_DIR
_base_ = '../ddetr_r50_refine_twostage.py'  # any ddetr config: model, pipelines, schedule

data_root = 'data/my_data/'  # the folder that holds the files below
train_ann_file = 'annotations/train.json'  # COCO json, relative to data_root
train_img_dir = 'images/train/'  # the images its file_names are relative to
val_ann_file = 'annotations/val.json'
val_img_dir = 'images/val/'
# test_ann_file / test_img_dir: optional, the test split is the val split without them
classes = ('car', 'truck')  # the annotation file's category names, in any order
