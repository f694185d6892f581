"""Model shapes, parameter counts and the fast max-pool."""

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hier_avg import models
from hier_avg.errors import UserError
from hier_avg.models.cnn_small import max_pool_2x2

# (name, parameter count): cnn_small by hand (conv 3*3*3*32+32,
# 3*3*32*64+64, 3*3*64*128+128; dense 2048*256+256, 256*10+10); ResNet-18
# (CIFAR) as published, 11.17 M.
PARAM_COUNTS = (('cnn_small', 896 + 18496 + 73856 + 524544 + 2570),
                ('resnet18', 11_173_962))


class ModelsTest(parameterized.TestCase):

  @parameterized.parameters(*PARAM_COUNTS)
  def test_parameter_count(self, name, count):
    model = models.get_model(name, 10)
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3)))
    self.assertEqual(sum(x.size for x in jax.tree.leaves(shapes['params'])),
                     count)

  @parameterized.parameters((8, 8), (9, 7), (32, 32))
  def test_max_pool_matches_flax(self, h, w):
    x = jax.random.normal(jax.random.key(1), (2, h, w, 3))
    want = nn.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool_2x2(x), want)
    # Without ties the gradients agree too.
    g_want = jax.grad(lambda x: (nn.max_pool(x, (2, 2), (2, 2)) ** 2).sum())(x)
    g_got = jax.grad(lambda x: (max_pool_2x2(x) ** 2).sum())(x)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-6)

  def test_unknown_model(self):
    with self.assertRaisesRegex(UserError, "unknown model.name='vgg99'"):
      models.get_model('vgg99', 10)


if __name__ == '__main__':
  absltest.main()
