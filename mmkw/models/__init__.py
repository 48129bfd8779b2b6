from .backbones import *  # noqa: F401,F403
from .conv_methods import *  # noqa: F401,F403
from .heads import *  # noqa: F401,F403
from .roi_extractors import *  # noqa: F401,F403
