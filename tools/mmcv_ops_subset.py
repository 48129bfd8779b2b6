"""Trims an mmcv source tree to the C++ ops that mmdet and mmpretrain run on the CPU, before
mmcv is built from source.

    python tools/mmcv_ops_subset.py MMCV_SOURCE_DIR [OP ...]

mmcv 2.1.0 compiles about 80 C++ files for a CPU build, most of them for ops that have CUDA
kernels only (CARAFE, sync BN, the 3D point ops, ...), which can never run on a CPU, or that
mmdet and mmpretrain never call. Those calling ops that do run on a CPU are listed in
:data:`DEFAULT_OPS`: RoIAlign, NMS (with soft-NMS and NMS matching: ``batched_nms``) and the
two deformable convolutions. Only their sources and mmcv's build information are compiled, and
the tree is changed in three ways:

- the other ops' C++ files under ``mmcv/ops/csrc/pytorch`` (and ``cpu/``) are deleted, since
  mmcv's ``setup.py`` compiles whatever it finds there;
- the Python bindings (``pybind.cpp``) keep only the functions still compiled;
- ``mmcv.utils.ext_loader.load_ext`` no longer fails on a missing function (every mmcv.ops
  module looks its functions up at import, and mmdet imports them all): it binds a function
  that raises an error naming the op and how to build it.

The deleted ops' Python modules stay importable, so every mmdet and mmpretrain import works.
Passing OP names (stems of the files under ``csrc/pytorch``) builds those instead; ``all``
leaves the tree untouched. CUDA builds are not trimmed (their kernels are bound in one file
for all ops): ``tools/setup_env.sh`` calls this only for a CPU-only build. It reads the
selection from ``$MMKW_MMCV_OPS``.
"""
import os
import os.path as osp
import re
import sys
from typing import Iterable, List, Set

# C++ ops (file stems under mmcv/ops/csrc/pytorch) that mmdet 3.3 and mmpretrain 1.2 call and
# that have CPU kernels in mmcv 2.1.0
DEFAULT_OPS = ('roi_align', 'nms', 'deform_conv', 'modulated_deform_conv')
# always compiled: the bindings and the compiler/CUDA version queries of mmcv.ops.info
ALWAYS = ('pybind', 'info')
REBUILD_HINT = 'MMKW_MMCV_OPS=all bash tools/setup_env.sh builds every op'

# Replaces the assertion in load_ext: a missing function becomes one that says what happened.
EXT_LOADER_ASSERT = re.compile(
    r"^( *)assert hasattr\(ext, fun\), f'\{fun\} miss in module \{name\}'$", re.M)
EXT_LOADER_STUB = r'\1if not hasattr(ext, fun):\n\1    setattr(ext, fun, _not_built(fun))'
EXT_LOADER_HELPER = f'''

def _not_built(fun):
    """A stand-in for a C++ function of an op that this build of mmcv left out."""

    def not_built(*args, **kwargs):
        raise RuntimeError(
            f'mmcv op function {{fun!r}} was not compiled: this mmcv was built by mmkw with '
            f'only the C++ ops that mmdet and mmpretrain run on a CPU ({{_BUILT_OPS}}). '
            '{REBUILD_HINT}.')

    return not_built
'''


def op_sources(pytorch_dir: str) -> List[str]:
    """The compiled C++ files of a CPU build: ``csrc/pytorch/*.cpp`` and ``cpu/*.cpp``."""
    files = [osp.join(pytorch_dir, name) for name in sorted(os.listdir(pytorch_dir))
             if name.endswith('.cpp')]
    cpu = osp.join(pytorch_dir, 'cpu')
    if osp.isdir(cpu):
        files += [osp.join(cpu, name) for name in sorted(os.listdir(cpu)) if name.endswith('.cpp')]
    return files


def op_of(path: str) -> str:
    """The op a source belongs to: its stem (``cpu/bbox_overlaps_cpu.cpp``: ``bbox_overlaps``)."""
    stem = osp.splitext(osp.basename(path))[0]
    return stem[:-len('_cpu')] if stem.endswith('_cpu') else stem


def defined_functions(source: str) -> Set[str]:
    """Names of the functions a C++ file defines at file level (a name at the start of a line,
    followed by its parameters and a body, not by ``;``)."""
    names = set()
    for match in re.finditer(r'^[A-Za-z_][\w:<>,\s\*&]*?\b(\w+)\s*\(', source, re.M):
        rest = source[match.end():]
        body, declaration = rest.find('{'), rest.find(';')
        if body != -1 and (declaration == -1 or body < declaration):
            names.add(match.group(1))
    return names


def _statement_end(text: str, start: int) -> int:
    """Index after the ``;`` closing the call that starts at ``start`` (parentheses counted
    outside string literals)."""
    depth, index, in_string = 0, start, False
    while index < len(text):
        char = text[index]
        if in_string:
            if char == '\\':
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == '(':
            depth += 1
        elif char == ')':
            depth -= 1
        elif char == ';' and depth == 0:
            return index + 1
        index += 1
    raise ValueError(f'unterminated statement at offset {start}')


def filter_bindings(pybind: str, keep: Set[str]) -> str:
    """``pybind`` with only the ``m.def`` bindings of functions in ``keep``."""
    pieces, position = [], 0
    for match in re.finditer(r'^[ \t]*m\.def\(', pybind, re.M):
        if match.start() < position:
            continue
        end = _statement_end(pybind, match.end() - 1)
        statement = pybind[match.start():end]
        bound = re.search(r'&\s*(\w+)', statement)
        if bound is None:
            raise ValueError(f'no function in binding: {statement[:80]!r}')
        pieces.append(pybind[position:match.start()])
        if bound.group(1) in keep:
            pieces.append(statement)
        else:
            # drop the line break that ended the statement too
            end += pybind[end:end + 1] == '\n'
        position = end
    pieces.append(pybind[position:])
    return ''.join(pieces)


def patch_ext_loader(text: str, built_ops: Iterable[str]) -> str:
    text, count = EXT_LOADER_ASSERT.subn(EXT_LOADER_STUB, text)
    if count != 1:
        raise ValueError('mmcv/utils/ext_loader.py has changed: load_ext assertion not found')
    return text + f'\n_BUILT_OPS = {", ".join(built_ops)!r}\n' + EXT_LOADER_HELPER


def trim(source_dir: str, ops: Iterable[str]) -> List[str]:
    """Trims the mmcv tree at ``source_dir`` to ``ops``; returns the deleted files."""
    pytorch_dir = osp.join(source_dir, 'mmcv', 'ops', 'csrc', 'pytorch')
    pybind_path = osp.join(pytorch_dir, 'pybind.cpp')
    loader_path = osp.join(source_dir, 'mmcv', 'utils', 'ext_loader.py')
    for path in (pybind_path, loader_path):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path} not found: is {source_dir} an mmcv source tree?')
    sources = op_sources(pytorch_dir)
    known = {op_of(path) for path in sources}
    ops = tuple(ops)
    unknown = sorted(set(ops) - known)
    if unknown:
        raise ValueError(f'unknown mmcv ops {unknown}; the ops of this tree are '
                         f'{sorted(known - set(ALWAYS))}')
    kept_ops = set(ops) | set(ALWAYS)
    deleted, kept_functions = [], set()
    for path in sources:
        if op_of(path) in kept_ops:
            with open(path) as f:
                kept_functions |= defined_functions(f.read())
        else:
            os.remove(path)
            deleted.append(path)
    with open(pybind_path) as f:
        pybind = filter_bindings(f.read(), kept_functions)
    with open(pybind_path, 'w') as f:
        f.write(pybind)
    with open(loader_path) as f:
        loader = patch_ext_loader(f.read(), ops)
    with open(loader_path, 'w') as f:
        f.write(loader)
    return deleted


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ('-h', '--help'):
        sys.exit(__doc__)
    ops = sys.argv[2:] or list(DEFAULT_OPS)
    if ops == ['all']:
        print('mmcv: building every op')
        return
    try:
        deleted = trim(sys.argv[1], ops)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f'mmcv_ops_subset: {error}')
    print(f'mmcv: building the C++ ops {", ".join(ops)} ({len(deleted)} other sources left '
          'out; ' + REBUILD_HINT + ')')


if __name__ == '__main__':
    main()
