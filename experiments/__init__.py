"""Research built on the toolkit. Modules here import ``lcm``, ``encoders``, ``diffusion`` and
``eval``; nothing in the toolkit imports them."""
