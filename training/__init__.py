"""Training: objectives (teacher flow, ODE init, DMD), rollouts, DeepSpeed engines, checkpoints, export."""
