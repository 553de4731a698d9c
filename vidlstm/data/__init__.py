"""Video data: readers, indexing, sampling, transforms, datasets."""
