"""The relay's compiled per-packet path (``call/relay_fast.pyx``), built by ``pip install``.

Optional: without Cython, picows' ``.pxd`` files or a C compiler the install still succeeds, and the
relay forwards in Python (``call/relay_picows.py`` says which path it takes). Everything else of the
project is in ``pyproject.toml``.
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize

    extensions = cythonize([Extension("call.relay_fast", ["call/relay_fast.pyx"], optional=True)],
                           compiler_directives={"language_level": 3})
except Exception as error:  # noqa: BLE001 (no Cython, or picows' .pxd not found: the Python path serves)
    print(f"call.relay_fast not built ({error}): the relay will forward in Python")
    extensions = []

setup(ext_modules=extensions)
