"""Datasets and data pipelines: the shapes world, webdataset shards, image folders."""
