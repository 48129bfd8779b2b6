from pathlib import Path

from setuptools import find_packages, setup

REQUIREMENTS = Path(__file__).resolve().parent / 'requirements'


def read_version() -> str:
    namespace: dict = {}
    with open('mmkw/version.py') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def requirements(name: str) -> list:
    """The requirement lines of ``requirements/<name>.txt``, the files tools/setup_env.sh
    installs, so that pip and the set-up script agree."""
    lines = (REQUIREMENTS / f'{name}.txt').read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


setup(
    name='mmkw',
    version=read_version(),
    description='Dynamic convolutions (Kernel Warehouse, KernelDNA, ODConv, DY-Conv) for '
    'MMPretrain and MMDetection',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'configs', 'tools')),
    python_requires='>=3.9',
    install_requires=requirements('runtime') + requirements('mmcv'),
    extras_require={
        'cls': requirements('cls'),
        'det': requirements('det'),
        'demo': requirements('demo'),
        'deploy': requirements('deploy'),
        'tests': requirements('tests'),
        'all': requirements('cls') + requirements('det') + requirements('demo'),
    },
    license='Apache License 2.0',
)
