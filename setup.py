from setuptools import find_packages, setup


def read_version() -> str:
    namespace: dict = {}
    with open('mmkw/version.py') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='mmkw',
    version=read_version(),
    description='Kernel Warehouse dynamic convolution for MMPretrain and MMDetection',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'configs', 'tools')),
    python_requires='>=3.9',
    install_requires=['torch', 'mmengine>=0.10.0', 'mmcv>=2.0.0,<2.2.0'],
    extras_require={'det': ['mmdet>=3.0.0'], 'cls': ['mmpretrain>=1.0.0']},
    license='Apache License 2.0',
)
