"""The one thing pyproject.toml cannot declare with this setuptools: the C extension.

``rasa_hred.core._kernels`` holds CPU kernels for decoding and training (see
``rasa_hred/core/kernels.py``). It is optional: where it does not compile (no C compiler),
the install goes on and the same results come from PyTorch ops.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rasa_hred.core._kernels",
            sources=["rasa_hred/core/_kernels.c"],
            extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"],
            optional=True,
        )
    ]
)
