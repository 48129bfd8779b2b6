"""tools/mmcv_ops_subset.py, the set-up's trimming of mmcv to the C++ ops mmdet and mmpretrain
run on a CPU: on a miniature mmcv tree, and on the mmcv this environment runs."""
import importlib.util
import os.path as osp
import subprocess
import sys
import types

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'mmcv_ops_subset.py')

spec = importlib.util.spec_from_file_location('mmcv_ops_subset', TOOL)
subset = importlib.util.module_from_spec(spec)
spec.loader.exec_module(subset)

PYBIND = '''#include "pytorch_cpp_helper.hpp"
void roi_align_forward(Tensor input, Tensor rois);
Tensor carafe_forward(Tensor x);
std::string get_compiler_version();

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("get_compiler_version", &get_compiler_version, "get_compiler_version");
  m.def("roi_align_forward", &roi_align_forward, "roi_align forward (CPU)",
        py::arg("input"), py::arg("rois"));
  m.def("carafe_forward", &carafe_forward, "carafe_forward (a \\"quoted\\" ;)",
        py::arg("x"));
}
'''
# the lines of mmcv 2.1.0's ext_loader.py that the tool changes, as they are there
EXT_LOADER = '''import importlib
import torch

if torch.__version__ != 'parrots':

    def load_ext(name, funcs):
        ext = importlib.import_module('mmcv.' + name)
        for fun in funcs:
            assert hasattr(ext, fun), f'{fun} miss in module {name}'
        return ext
'''


def make_tree(root):
    pytorch = root / 'mmcv' / 'ops' / 'csrc' / 'pytorch'
    (pytorch / 'cpu').mkdir(parents=True)
    (root / 'mmcv' / 'utils').mkdir(parents=True)
    (pytorch / 'pybind.cpp').write_text(PYBIND)
    (pytorch / 'info.cpp').write_text('std::string get_compiler_version() { return "gcc"; }\n')
    (pytorch / 'roi_align.cpp').write_text(
        'void roi_align_forward_impl(Tensor input, Tensor rois);\n'
        'void roi_align_forward(Tensor input,\n    Tensor rois) {\n'
        '  roi_align_forward_impl(input, rois);\n}\n')
    (pytorch / 'cpu' / 'roi_align.cpp').write_text('void roi_align_forward_cpu() {}\n')
    (pytorch / 'carafe.cpp').write_text('Tensor carafe_forward(Tensor x) { return x; }\n')
    (pytorch / 'cpu' / 'bbox_overlaps_cpu.cpp').write_text('void bbox_overlaps_cpu() {}\n')
    (root / 'mmcv' / 'utils' / 'ext_loader.py').write_text(EXT_LOADER)
    return pytorch


def test_definitions_not_declarations():
    source = ('void declared(Tensor x);\nTensor defined(Tensor x,\n  int y) {\n  return x;\n}\n'
              'std::vector<int> templated(int a) { return {a}; }\n')
    assert subset.defined_functions(source) == {'defined', 'templated'}


def test_tree_keeps_only_the_chosen_ops(tmp_path):
    pytorch = make_tree(tmp_path)
    deleted = subset.trim(str(tmp_path), ['roi_align'])
    assert sorted(osp.relpath(path, pytorch) for path in deleted) == \
        ['carafe.cpp', 'cpu/bbox_overlaps_cpu.cpp']
    assert (pytorch / 'roi_align.cpp').is_file() and (pytorch / 'cpu' / 'roi_align.cpp').is_file()
    pybind = (pytorch / 'pybind.cpp').read_text()
    # the declarations stay (harmless), the binding of a function no longer compiled goes
    assert 'm.def("carafe_forward"' not in pybind and 'Tensor carafe_forward' in pybind
    assert 'm.def("roi_align_forward", &roi_align_forward, "roi_align forward (CPU)",\n' \
           '        py::arg("input"), py::arg("rois"));\n}\n' in pybind
    assert 'm.def("get_compiler_version"' in pybind


def test_left_out_op_fails_when_called_with_what_to_do(tmp_path):
    make_tree(tmp_path)
    subset.trim(str(tmp_path), ['roi_align'])
    loader = types.ModuleType('patched_ext_loader')
    exec((tmp_path / 'mmcv' / 'utils' / 'ext_loader.py').read_text(), loader.__dict__)
    fake_ext = types.ModuleType('mmcv._mmkw_test_ext')
    fake_ext.roi_align_forward = lambda *args: 'ran'
    sys.modules['mmcv._mmkw_test_ext'] = fake_ext
    try:
        ext = loader.load_ext('_mmkw_test_ext', ['roi_align_forward', 'carafe_forward'])
    finally:
        del sys.modules['mmcv._mmkw_test_ext']
    assert ext.roi_align_forward() == 'ran'
    with pytest.raises(RuntimeError, match=r"'carafe_forward' was not compiled.*\(roi_align\)"
                                           r".*MMKW_MMCV_OPS=all bash tools/setup_env.sh"):
        ext.carafe_forward(torch.zeros(1))


def test_bad_input_is_refused(tmp_path):
    make_tree(tmp_path)
    with pytest.raises(ValueError, match=r"unknown mmcv ops \['roi_algin'\].*'carafe'"):
        subset.trim(str(tmp_path), ['roi_algin'])
    done = subprocess.run([sys.executable, TOOL, str(tmp_path / 'nothing')],
                          capture_output=True, text=True)
    assert done.returncode != 0 and 'is' in done.stderr and 'an mmcv source tree' in done.stderr
    (tmp_path / 'mmcv' / 'utils' / 'ext_loader.py').write_text('def load_ext(): pass\n')
    with pytest.raises(ValueError, match='load_ext assertion not found'):
        subset.trim(str(tmp_path), ['roi_align'])


def test_this_mmcv_runs_the_kept_ops_and_names_the_others():
    """On the mmcv of this environment: what mmdet runs on a CPU works; where the set-up
    trimmed mmcv, a left-out op says how to build it."""
    from mmcv.ops import RoIAlign, batched_nms, get_compiler_version
    from mmcv.utils import ext_loader

    assert get_compiler_version()
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    dets, keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3),
                             dict(type='nms', iou_threshold=0.5))
    assert keep.tolist() == [0, 2]
    rois = torch.tensor([[0., 0., 0., 4., 4.]])
    pooled = RoIAlign((2, 2), 1.0, sampling_ratio=2, aligned=True)(torch.ones(1, 1, 8, 8), rois)
    assert torch.allclose(pooled, torch.ones(1, 1, 2, 2))
    if not hasattr(ext_loader, '_BUILT_OPS'):
        pytest.skip('this mmcv was built with every op')
    from mmcv.ops import sigmoid_focal_loss
    with pytest.raises(RuntimeError, match='sigmoid_focal_loss_forward.*was not compiled'):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 2.0, 0.25)
