"""Applications built on the Python API (:mod:`lcm.api`): file summarization (``lcm summarize``,
``lcm generate``). Nothing below the API imports them."""
