import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
sys.path.insert(0, str(REPO / 'tools' / 'dataset_converters'))


@pytest.fixture(scope='session')
def digits_root(tmp_path_factory):
    """The embedded digits dataset in ImageNet layout (written once per session)."""
    from make_digits_imagenet import make_digits_imagenet
    root = tmp_path_factory.mktemp('digits')
    make_digits_imagenet(str(root))
    return root


@pytest.fixture(scope='session')
def shapes_root(tmp_path_factory):
    """A tiny generated COCO-format instance-segmentation dataset."""
    from make_shapes_coco import make_shapes_coco
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_coco(str(root), num_train=8, num_val=4, img_size=96, seed=0)
    return root


@pytest.fixture(scope='module')
def one_thread():
    """torch on one thread for a module: on maps of a few pixels OpenMP synchronisation costs
    more than a second thread gains, and collapses when the machine's cores are busy."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def avx512_paths(monkeypatch):
    """KW's choice of execution path depends on whether the CPU has AVX-512
    (``per_sample_conv.AVX512_CPU``); pinning it lets every machine test the same paths (the
    choice itself is tested with both values)."""
    from mmkw.ops import per_sample_conv
    monkeypatch.setattr(per_sample_conv, 'AVX512_CPU', True)
