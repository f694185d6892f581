"""Models by name (`model.name`)."""

import flax.linen as nn

from hier_avg.errors import UserError
from hier_avg.models.cnn_small import CNNSmall
from hier_avg.models.mlp import MLP
from hier_avg.models.resnet import ResNet18

MODELS = {
    'cnn_small': CNNSmall,
    'mlp': MLP,
    'resnet18': ResNet18,
}


def get_model(name: str, num_classes: int) -> nn.Module:
  if name not in MODELS:
    raise UserError(f'unknown model.name={name!r}; choose one of '
                    f'{", ".join(sorted(MODELS))}.')
  return MODELS[name](num_classes=num_classes)
