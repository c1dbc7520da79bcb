"""Data sets: synthreid, Market-layout folders (via torchreid), CIFAR / ImageNet / Fashion-MNIST.

Submodules are imported explicitly (``reid_dhm.data.reid_manager``,
``reid_dhm.data.classification``) so that importing one does not pull in the others.
"""
