"""tools/mmcv_precompiled_header.py, the set-up's precompiled header for the mmcv build: it
writes the .gch beside the header, and gcc uses it for a source that includes the header."""
import os.path as osp
import shutil
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'mmcv_precompiled_header.py')

pytestmark = pytest.mark.skipif(shutil.which('c++') is None, reason='needs a C++ compiler')


def test_precompiled_header_is_written_and_used(tmp_path):
    common = tmp_path / 'mmcv' / 'ops' / 'csrc' / 'common'
    common.mkdir(parents=True)
    # a stand-in for mmcv's helper: the real one parses torch's headers for ~25 s
    (common / 'pytorch_cpp_helper.hpp').write_text(
        '#ifndef HELPER\n#define HELPER\n#include <vector>\n#endif\n')
    done = subprocess.run([sys.executable, TOOL, str(tmp_path)], capture_output=True,
                          text=True, env={'PATH': '/usr/bin:/bin', 'CFLAGS': '-g0'})
    assert done.returncode == 0, done.stderr
    gch = common / 'pytorch_cpp_helper.hpp.gch'
    assert gch.is_file() and gch.stat().st_size > 0
    # -H lists the headers a compile reads; '!' marks a valid precompiled one
    source = tmp_path / 'op.cpp'
    source.write_text('#include "pytorch_cpp_helper.hpp"\nint f() { return 1; }\n')
    import sysconfig
    flags = (sysconfig.get_config_var('CFLAGS') or '').split() + ['-g0'] + \
        (sysconfig.get_config_var('CCSHARED') or '').split()
    compiled = subprocess.run(['c++', *flags, f'-I{common}', '-H', '-c', str(source), '-o',
                               str(tmp_path / 'op.o'), '-std=c++20',
                               '-DTORCH_API_INCLUDE_EXTENSION_H',
                               '-DTORCH_EXTENSION_NAME=_ext'],
                              capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    assert f'! {gch}' in compiled.stderr


def test_not_an_mmcv_tree_is_refused(tmp_path):
    done = subprocess.run([sys.executable, TOOL, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0
    assert 'pytorch_cpp_helper.hpp not found: is' in done.stderr
