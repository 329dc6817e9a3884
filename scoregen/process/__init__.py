"""The forward processes and their numerics: SDEs (sde), exact Gaussian-mixture laws (distributions), noise
grids (schedules) and generic ODE solvers (ode). Nothing here knows a network."""
