"""Models: parameter counts, output shapes, variables, BatchNorm, max-pool."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hier_avg import models
from hier_avg.models import layers
from hier_avg.models.cnn_small import max_pool_2x2
from hier_avg.models.im2col import im2col_conv

# (name, parameter count) with 10 classes. The CIFAR networks must have
# exactly the parameters of the PyTorch models they follow
# (kuangliu/pytorch-cifar); each figure is recounted here layer by layer.
# Notation: a k x k conv from i to o channels has k*k*i*o weights (+ o if it
# has a bias); a BatchNorm of c channels has 2c (scale and shift); the
# classifier from f features has 10f + 10.
# - cnn_small: conv 3*3*3*32+32, 3*3*32*64+64, 3*3*64*128+128; dense
#   2048*256+256, 256*10+10.
# - ResNets: stem 3*3*3*64 + 2*64 = 1,856. BasicBlock i -> w: 9iw + 9w^2 + 4w;
#   Bottleneck i -> w -> 4w: iw + 9w^2 + 4w^2 + 12w; either + a projection
#   (i*out + 2*out) where the shape changes. Stages w = 64, 128, 256, 512:
#   resnet18 (2,2,2,2 basic): 1,856 + 147,968 + 525,568 + 2,099,712
#     + 8,393,728 + 5,130 = 11,173,962;
#   resnet34 (3,4,6,3 basic): 1,856 + 221,952 + 1,116,416 + 6,822,400
#     + 13,114,368 + 5,130 = 21,282,122;
#   resnet50 (3,4,6,3 bottleneck): 1,856 + 215,808 + 1,219,584 + 7,098,368
#     + 14,964,736 + 20,490 = 23,520,842.
# - VGG: each conv i -> w with bias and BatchNorm 9iw + 3w; per pooled stage:
#   vgg16 (2,2,3,3,3 convs): 38,976 + 221,952 + 1,476,864 + 5,902,848
#     + 7,082,496 + 5,130 = 14,728,266;
#   vgg19 (2,2,4,4,4 convs): 38,976 + 221,952 + 2,067,456 + 8,263,680
#     + 9,443,328 + 5,130 = 20,040,522 (the torchsummary figure of
#     kuangliu's VGG19; the 20,035,018 also quoted is a VGG-19 whose convs
#     have no bias: 5,504 fewer, one per conv channel).
# - mobilenet_v2: block i -> o with hidden h = expansion*i: ih + 13h + ho + 2o
#   (+ io + 2o shortcut at stride 1 when i != o); stem 3*3*3*32 + 64 = 928;
#   stages 2,528 + 14,400 + 39,696 + 183,872 + 309,504 + 795,264 + 525,760;
#   head conv 320*1280 + 2*1280 = 412,160; fc 12,810: 2,296,922.
# - googlenet: each conv (bias, BatchNorm) k*k*i*o + 3o; stem 5,760;
#   Inception(i; a, r3, b, r5, c, p) = i(a + r3 + r5 + p) + 9(r3 b + r5 c + c^2)
#   + 3(a + r3 + b + r5 + 2c + p): 3a-5b 165,552 + 424,096 + 386,016
#   + 462,936 + 523,912 + 611,072 + 952,704 + 1,127,808 + 1,496,144;
#   fc 10,250: 6,166,250.
# - densenet121 (k = 32): stem 3*3*3*64 = 1,728; a dense layer on c channels
#   2c + 128c + 256 + 9*128*32; a transition c -> c/2: 2c + c^2/2; blocks and
#   transitions 335,040 + 33,280 + 919,680 + 132,096 + 2,837,760 + 526,336
#   + 2,158,080; BatchNorm 2*1024 + fc 10,250 = 12,298: 6,956,298.
PARAM_COUNTS = (('cnn_small', 896 + 18496 + 73856 + 524544 + 2570),
                ('resnet18', 11_173_962),
                ('resnet34', 21_282_122),
                ('resnet50', 23_520_842),
                ('vgg16', 14_728_266),
                ('vgg19', 20_040_522),
                ('mobilenet_v2', 2_296_922),
                ('googlenet', 6_166_250),
                ('densenet121', 6_956_298))
# ImageNet stem (7x7 stride-2 conv + max-pool) at 224x224 with 1000 classes:
# torchvision's resnet18 and resnet50. The stem is 7*7*3*64 + 2*64 = 9,536
# instead of 1,856 (+7,680), and the classifier 1000f + 1000 instead of
# 10f + 10: resnet18 11,173,962 + 7,680 + 990*513 = 11,689,512; resnet50
# 23,520,842 + 7,680 + 990*2,049 = 25,557,032.
IMAGENET_PARAM_COUNTS = (('resnet18', 11_689_512), ('resnet50', 25_557_032))
BATCH_NORM_MODELS = ('resnet18', 'resnet34', 'resnet50', 'vgg16', 'vgg19',
                     'mobilenet_v2', 'googlenet', 'densenet121')


@functools.cache
def _init_shapes(name, num_classes, conv='xla'):
  """Variable shapes and each BatchNorm's (momentum, epsilon), no compiling.

  Shared by the tests (tracing the big networks takes about a second).
  """
  batch_norm_settings = []

  def record_batch_norms(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      batch_norm_settings.append((context.module.momentum,
                                  context.module.epsilon))
    return next_fun(*args, **kwargs)

  model = models.get_model(name, num_classes, models.make_layers(conv=conv))
  with nn.intercept_methods(record_batch_norms):
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3)))
  return shapes, batch_norm_settings


class ModelsTest(parameterized.TestCase):

  def test_every_model_is_counted(self):
    self.assertCountEqual([name for name, _ in PARAM_COUNTS] + ['mlp'],
                          models.MODELS)

  @parameterized.parameters(*PARAM_COUNTS)
  def test_parameter_count(self, name, count):
    shapes, _ = _init_shapes(name, 10)
    self.assertEqual(sum(x.size for x in jax.tree.leaves(shapes['params'])),
                     count)

  @parameterized.parameters(*IMAGENET_PARAM_COUNTS)
  def test_imagenet_stem_parameter_count_and_shapes(self, name, count):
    model = models.get_model(name, 1000, stem='imagenet')
    x = jnp.zeros((2, 224, 224, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    self.assertEqual(
        sum(v.size for v in jax.tree.leaves(variables['params'])), count)
    # 224 -> 112 (stem) -> 56 (pool) -> 7 after the stages.
    features = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=True),
        variables, x)[1]['intermediates']
    blocks = [k for k in features if k.startswith(('BasicBlock',
                                                   'Bottleneck'))]
    last = max(blocks, key=lambda k: int(k.split('_')[1]))
    self.assertEqual(features[last]['__call__'][0].shape[1:3], (7, 7))

  @parameterized.parameters(*models.MODELS)
  def test_output_is_one_logit_per_class(self, name):
    num_classes, batch = 100, 3  # Not 10, so a hard-coded 10 fails.
    model = models.get_model(name, num_classes)
    variables, _ = _init_shapes(name, num_classes)
    x = jnp.zeros((batch, 32, 32, 3))
    # Training mode only: evaluation differs just in where BatchNorm takes
    # its statistics, and each trace of a big network costs about a second.
    logits, updates = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']),
        variables, x)
    self.assertEqual(logits.shape, (batch, num_classes))
    # Training updates every running statistic, and nothing else.
    self.assertEqual(jax.tree.structure(updates.get('batch_stats', {})),
                     jax.tree.structure(variables.get('batch_stats', {})))

  @parameterized.parameters(*models.MODELS)
  def test_im2col_has_the_same_variables(self, name):
    # Checkpoints and averaging must not care which kernel runs.
    shape_and_dtype = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype),
                                                tree)
    self.assertEqual(shape_and_dtype(_init_shapes(name, 10, 'im2col')[0]),
                     shape_and_dtype(_init_shapes(name, 10)[0]))

  @parameterized.parameters(*models.MODELS)
  def test_every_layer_is_built_from_the_given_layers(self, name):
    # A block that dropped its network's `layers` would build with the
    # defaults: XLA's kernel and float32.
    built = []

    def record_layers(next_fun, args, kwargs, context):
      module = context.module
      if isinstance(module, (nn.Conv, nn.Dense, nn.BatchNorm)):
        depthwise = getattr(module, 'feature_group_count', 1) > 1
        kernel = getattr(module, 'conv_general_dilated', None)
        built.append((type(module).__name__, depthwise, kernel,
                      module.dtype))
      return next_fun(*args, **kwargs)

    model = models.get_model(name, 10, models.make_layers('im2col',
                                                          'bfloat16'))
    with nn.intercept_methods(record_layers):
      jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    self.assertNotEmpty(built)
    for kind, depthwise, kernel, dtype in built:
      self.assertEqual(dtype, jnp.bfloat16, kind)
      if kind == 'Conv':
        # Depthwise convolutions always run XLA's kernel.
        self.assertIs(kernel, None if depthwise else im2col_conv)

  @parameterized.parameters(*BATCH_NORM_MODELS)
  def test_batch_norms_use_the_shared_constants(self, name):
    # Recomputing BatchNorm statistics reads layers.BN_MOMENTUM.
    _, batch_norm_settings = _init_shapes(name, 10)
    self.assertNotEmpty(batch_norm_settings)
    self.assertEqual(set(batch_norm_settings),
                     {(layers.BN_MOMENTUM, layers.BN_EPSILON)})

  @parameterized.parameters((8, 8), (9, 7), (32, 32))
  def test_max_pool_matches_flax(self, h, w):
    x = jax.random.normal(jax.random.key(1), (2, h, w, 3))
    want = nn.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool_2x2(x), want)
    # Without ties the gradients agree too.
    g_want = jax.grad(lambda x: (nn.max_pool(x, (2, 2), (2, 2)) ** 2).sum())(x)
    g_got = jax.grad(lambda x: (max_pool_2x2(x) ** 2).sum())(x)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-6)


if __name__ == '__main__':
  absltest.main()
