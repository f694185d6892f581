"""Models by name (`model.name`)."""

import flax.linen as nn

from hier_avg.models.cnn_small import CNNSmall
from hier_avg.models.densenet import DenseNet121
from hier_avg.models.googlenet import GoogLeNet
from hier_avg.models.layers import DEFAULT_LAYERS
from hier_avg.models.layers import DTYPES  # pylint: disable=unused-import
from hier_avg.models.layers import Layers
from hier_avg.models.layers import make_layers  # pylint: disable=unused-import
from hier_avg.models.mlp import MLP
from hier_avg.models.mobilenet_v2 import MobileNetV2
from hier_avg.models.resnet import ResNet18
from hier_avg.models.resnet import STEMS  # pylint: disable=unused-import
from hier_avg.models.resnet import ResNet34
from hier_avg.models.resnet import ResNet50
from hier_avg.models.vgg import VGG16
from hier_avg.models.vgg import VGG19

MODELS = {
    'cnn_small': CNNSmall,
    'densenet121': DenseNet121,
    'googlenet': GoogLeNet,
    'mlp': MLP,
    'mobilenet_v2': MobileNetV2,
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'vgg16': VGG16,
    'vgg19': VGG19,
}


# The models that take `model.stem` ('imagenet': 7x7 stride-2 + max-pool).
STEM_MODELS = ('resnet18', 'resnet34', 'resnet50')


def get_model(name: str, num_classes: int,
              layers: Layers = DEFAULT_LAYERS,
              stem: str = 'cifar') -> nn.Module:
  """`model.name` built from `layers` (see `layers.make_layers`).

  `stem` applies to STEM_MODELS only (hier_avg/config_keys.py checks it).
  """
  kwargs = {'stem': stem} if name in STEM_MODELS else {}
  return MODELS[name](num_classes=num_classes, layers=layers, **kwargs)
