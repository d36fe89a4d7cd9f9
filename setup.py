"""The one thing pyproject.toml cannot declare with this setuptools: the C extension.

``rasa_hred.core._reductions`` holds beam search's row reductions (see
``rasa_hred/core/reductions.py``). It is optional: where it does not compile (no C compiler),
the install goes on and the same results come from PyTorch ops.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rasa_hred.core._reductions",
            sources=["rasa_hred/core/_reductions.c"],
            extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"],
            optional=True,
        )
    ]
)
