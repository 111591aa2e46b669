"""Build the one compiled piece: the fused CLD kernel (plain C, no dependencies).

Everything else is configured in pyproject.toml. If the compiler is missing, cld_lake still
works with the NumPy kernel (slower); `cld-lake env` says which kernel is active.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cld_lake.score._ckernel",
            sources=["cld_lake/score/_ckernel.c"],
            extra_compile_args=["-O3", "-fno-fast-math"],
            optional=True,
        )
    ]
)
