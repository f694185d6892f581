"""im2col convolution: the same function, gradient and parameters as XLA's."""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import pytest
import jax
import jax.numpy as jnp
import numpy as np

from hier_avg import builder, models
from hier_avg.data import datasets
from hier_avg.models.im2col import im2col_conv, patch_bytes
from tests.support import configs

# (kernel, strides, padding): the shapes CIFAR networks use, and odd ones.
CONV_CASES = (
    ((3, 3), (1, 1), 'SAME'),
    ((3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 1), (2, 2), 'VALID'),
    ((3, 2), (1, 2), 'VALID'),
    ((5, 5), (1, 1), ((2, 1), (0, 3))),
)


class Im2colTest(parameterized.TestCase):

  @parameterized.parameters(*CONV_CASES)
  def test_matches_xla_convolution(self, kernel, strides, padding):
    x = jax.random.normal(jax.random.key(0), (2, 9, 10, 3))
    w = jax.random.normal(jax.random.key(1), kernel + (3, 5))
    dims = ('NHWC', 'HWIO', 'NHWC')

    def xla(x, w):
      return jax.lax.conv_general_dilated(x, w, strides, padding,
                                          dimension_numbers=dims)

    def ours(x, w):
      return im2col_conv(x, w, strides, padding, dimension_numbers=dims)

    np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, w: (f(x, w) ** 2).sum()
    for got, want in zip(jax.grad(loss(ours), (0, 1))(x, w),
                         jax.grad(loss(xla), (0, 1))(x, w)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  def test_vmapped_learners_each_get_their_own_kernel(self):
    x = jax.random.normal(jax.random.key(0), (4, 2, 8, 8, 3))
    w = jax.random.normal(jax.random.key(1), (4, 3, 3, 3, 6))
    got = jax.vmap(lambda x, w: im2col_conv(x, w, (1, 1), 'SAME'))(x, w)
    for p in range(4):
      want = jax.lax.conv_general_dilated(
          x[p], w[p], (1, 1), 'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      np.testing.assert_allclose(got[p], want, rtol=1e-5, atol=1e-5)

  def test_unsupported_convolutions_are_refused(self):
    x, w = jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 2, 4))
    with self.assertRaisesRegex(NotImplementedError, 'groups'):
      im2col_conv(x, w, (1, 1), 'SAME', feature_group_count=2)
    with self.assertRaisesRegex(NotImplementedError, 'dilation'):
      im2col_conv(x, jnp.zeros((3, 3, 4, 4)), (1, 1), 'SAME',
                  rhs_dilation=(2, 2))

  @parameterized.parameters('cnn_small', 'resnet18')
  @pytest.mark.slow
  def test_models_compute_the_same_with_either_kernel(self, name):
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    xla = models.get_model(name, 10, models.make_layers(conv='xla'))
    im2col = models.get_model(name, 10, models.make_layers(conv='im2col'))
    variables = xla.init(jax.random.key(0), x)
    # Same parameter names, shapes and initial values: checkpoints and
    # averaging do not care which kernel runs. To the bit: the initial
    # values come from the same random-number ops on the same keys,
    # element by element; the forward passes, which differ, never reach
    # them.
    other = im2col.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, variables, other)
    np.testing.assert_allclose(im2col.apply(variables, x),
                               xla.apply(variables, x), rtol=1e-4, atol=1e-4)


class PatchBytesTest(absltest.TestCase):
  """The im2col memory estimate counts the patches im2col would build."""

  def test_one_convolution(self):
    conv = lambda x, w, strides, padding: jax.lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    x, w = jnp.zeros((2, 8, 8, 3)), jnp.zeros((3, 3, 3, 4))
    # 2 images x 8 x 8 positions x (3 x 3 x 3) patch values x 4 bytes.
    self.assertEqual(patch_bytes(lambda x, w: conv(x, w, (1, 1), 'SAME'),
                                 x, w), 2 * 64 * 27 * 4)
    # Stride 2, no padding: 3 x 3 output positions.
    self.assertEqual(patch_bytes(lambda x, w: conv(x, w, (2, 2), 'VALID'),
                                 x, w), 2 * 9 * 27 * 4)
    self.assertEqual(
        patch_bytes(lambda x, w: conv(x.astype(jnp.bfloat16),
                                      w.astype(jnp.bfloat16), (1, 1), 'SAME'),
                    x, w), 2 * 64 * 27 * 2)

  def test_a_model_sums_its_layers(self):
    x = jnp.zeros((4, 32, 32, 3))
    model = models.get_model('cnn_small', 10, models.make_layers(conv='xla'))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    convs = patch_bytes(lambda v: model.apply(v, x), variables)
    # Equal to the patches the im2col model's matmuls take: each one's
    # [N, H, W, kh*kw*Cin] operand.
    im2col = models.get_model('cnn_small', 10,
                              models.make_layers(conv='im2col'))
    jaxpr = jax.make_jaxpr(lambda v: im2col.apply(v, x))(variables)
    matmul_operands = [e.invars[0].aval for e in jaxpr.jaxpr.eqns
                       if e.primitive.name == 'dot_general' and
                       e.invars[0].aval.ndim == 4]
    self.assertLen(matmul_operands, 3)
    self.assertEqual(convs, sum(a.size * a.dtype.itemsize
                                for a in matmul_operands))

  def test_depthwise_convolutions_stay_xla_and_cost_nothing(self):
    x, w = jnp.zeros((2, 8, 8, 4)), jnp.zeros((3, 3, 1, 4))
    depthwise = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=4)
    self.assertEqual(patch_bytes(depthwise, x, w), 0)


class AutoConvTest(absltest.TestCase):
  """'auto' takes im2col for vmapped learners only where its patches fit."""

  def _conv(self, config):
    data = datasets.synthetic(512, 64, 32, 10)
    topology = builder.build_topology(config)
    engine, _ = builder.build_engine(config, data, topology, 10, 10)
    return topology, engine.learner.model.layers.conv_name

  def _config(self):
    config = configs.tiny_config(1)
    config.model.name = 'cnn_small'
    config.runtime.learner_loop = 'vmap'
    config.mesh.update(node_devices=1, local_devices=1)  # 8 per device.
    return config

  def test_patches_that_fit_take_im2col(self):
    topology, conv = self._conv(self._config())
    self.assertEqual(topology.learners_per_device, 8)
    self.assertEqual(conv, 'im2col')

  def test_patches_over_the_memory_share_keep_xla(self):
    config = self._config()
    # cnn_small's patches: 8 learners x 8 images x (32x32x27 + 16x16x288
    # + 8x8x576) floats = 4.6 MiB; a share under that keeps XLA's.
    need = 8 * 8 * (32 * 32 * 27 + 16 * 16 * 288 + 8 * 8 * 576) * 4
    with mock.patch.object(builder.memory, 'device_memory_bytes',
                           return_value=2 * need - 1):
      self.assertEqual(self._conv(config)[1], 'xla')
    with mock.patch.object(builder.memory, 'device_memory_bytes',
                           return_value=2 * need):
      self.assertEqual(self._conv(config)[1], 'im2col')
    # Asked for by name, im2col is what runs.
    config.model.conv = 'im2col'
    with mock.patch.object(builder.memory, 'device_memory_bytes',
                           return_value=1):
      self.assertEqual(self._conv(config)[1], 'im2col')

  def test_the_estimate_is_not_asked_unless_im2col_is_in_question(self):
    config = self._config()
    config.runtime.learner_loop = 'unroll'
    with mock.patch.object(builder, '_im2col_patch_bytes',
                           side_effect=AssertionError('traced')):
      self.assertEqual(self._conv(config)[1], 'xla')


class MixedPrecisionTest(absltest.TestCase):

  def test_bfloat16_computes_in_bf16_and_keeps_float32_parameters(self):
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    fp32 = models.get_model('cnn_small', 10)
    bf16 = models.get_model('cnn_small', 10,
                            models.make_layers(dtype='bfloat16'))
    variables = bf16.init(jax.random.key(0), x)
    self.assertEqual({a.dtype for a in jax.tree.leaves(variables)},
                     {jnp.dtype(jnp.float32)})
    logits = bf16.apply(variables, x)
    self.assertEqual(logits.dtype, jnp.bfloat16)
    np.testing.assert_allclose(logits.astype(jnp.float32),
                               fp32.apply(variables, x), rtol=0.05,
                               atol=0.05)
    grads = jax.grad(lambda v: bf16.apply(v, x).astype(jnp.float32).sum())(
        variables)
    self.assertEqual({g.dtype for g in jax.tree.leaves(grads)},
                     {jnp.dtype(jnp.float32)})


if __name__ == '__main__':
  absltest.main()
