"""Datasets (``datasets``: COCO-Stuff 10k/164k, VOC 2012, Cityscapes, procedural shapes) and the
recipe's augmentation and mean subtraction (``transforms``)."""
