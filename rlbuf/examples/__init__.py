"""Runnable examples (``python -m rlbuf.examples.<name>``), built only from rlbuf's ``Collector``
and ``ReplayBuffer`` with flax networks and optax optimizers (``pip install -e ".[examples]"``):

- ``dqn``: DQN on gymnax CartPole-v1 (``--prioritized`` for ``PrioritizedSampler``);
- ``recurrent``: recurrent (GRU) Q-learning from ``SliceSampler`` slices on a partially
  observable CartPole (velocities hidden), against the same agent without memory.
"""
