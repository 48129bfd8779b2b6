"""Precompiles the torch headers that mmcv's C++ ops include, before mmcv is built from source.

    python tools/mmcv_precompiled_header.py MMCV_SOURCE_DIR

Most of mmcv's sources start with ``#include "pytorch_cpp_helper.hpp"``, which pulls in torch's
tensor headers: parsing them is most of each file's compile time. gcc looks for
``pytorch_cpp_helper.hpp.gch`` next to the header and uses it instead of parsing when it was
made with the flags of the file being compiled, so this script compiles the header once with
the flags that torch's ``BuildExtension`` gives mmcv's CPU sources (Python's ``CFLAGS``, then
``$CFLAGS`` from the environment, ``-fPIC``, the include paths, ``-std=c++20`` and torch's
extension macros). Should they ever differ, gcc ignores the file and compiles as without it.
The file is not a package file of mmcv (its ``MANIFEST.in`` takes ``*.hpp``), so the wheel is
unchanged. Used by ``tools/setup_env.sh``.
"""
import os
import os.path as osp
import shlex
import subprocess
import sys
import sysconfig
import time


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    source = osp.abspath(sys.argv[1])
    common = osp.join(source, 'mmcv', 'ops', 'csrc', 'common')
    header = osp.join(common, 'pytorch_cpp_helper.hpp')
    if not osp.isfile(header):
        sys.exit(f'{header} not found: is {source} an mmcv source tree?')
    from torch.utils.cpp_extension import include_paths

    cflags = shlex.split(sysconfig.get_config_var('CFLAGS') or '')
    cflags += shlex.split(os.environ.get('CFLAGS', ''))
    cflags += shlex.split(sysconfig.get_config_var('CCSHARED') or '')
    includes = [common, *include_paths(), osp.join(sys.prefix, 'include'),
                sysconfig.get_paths()['include']]
    command = [os.environ.get('CXX', 'c++'), *cflags, *(f'-I{path}' for path in includes),
               '-x', 'c++-header', header, '-o', header + '.gch', '-std=c++20',
               '-DTORCH_API_INCLUDE_EXTENSION_H', '-DTORCH_EXTENSION_NAME=_ext', '-w']
    start = time.time()
    subprocess.run(command, check=True)
    print(f'precompiled {header} in {time.time() - start:.0f} s')


if __name__ == '__main__':
    main()
