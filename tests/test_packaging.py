"""``import mmkw`` needs only what setup.py requires; the extras (mmpretrain, mmdet, the demo's
packages) are optional, and setup.py reads the same requirement files as tools/setup_env.sh."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ('mmpretrain', 'mmdet', 'sklearn', 'matplotlib', 'pycocotools')

# None in sys.modules is what Python's import system shows for a package that is not
# installed: importing it raises ModuleNotFoundError and importlib's find_spec returns None.
BLOCK_AND_IMPORT = f'''
import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None
import torch
import mmkw
from mmkw.models import DynamicResNet
model = DynamicResNet(18, conv_cfg=dict(type='KW', budget='1x')).eval()
assert model(torch.randn(1, 3, 32, 32))[0].shape == (1, 512, 1, 1)
assert not hasattr(mmkw.models, 'KWLinearClsHead')
print('ok')
'''


def test_import_needs_only_the_install_requires():
    result = subprocess.run([sys.executable, '-c', BLOCK_AND_IMPORT], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith('ok')


def test_setup_py_requirements_are_the_requirement_files():
    namespace = {'__file__': str(REPO / 'setup.py')}
    source = (REPO / 'setup.py').read_text().replace('setup(', 'dict(', 1)
    exec(compile(source, 'setup.py', 'exec'), namespace)  # runs requirements(), not setup()
    read = namespace['requirements']
    pinned = [line for name in ('runtime', 'mmcv') for line in read(name)]
    assert 'mmengine==0.10.7' in pinned and 'mmcv==2.1.0' in pinned
    assert not any(name in line for line in pinned for name in OPTIONAL + ('mmdet', ))
    assert read('cls') == ['mmpretrain==1.2.0']
    assert read('det')[0] == 'mmdet==3.3.0'
    setup_env = (REPO / 'tools' / 'setup_env.sh').read_text()
    for name in ('runtime', 'cls', 'det', 'demo', 'tests'):
        assert f'requirements/{name}.txt' in setup_env, name
