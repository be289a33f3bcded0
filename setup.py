"""The relay's compiled per-packet path (``call/relay_fast.pyx``), built by ``pip install``.

Optional: without Cython, picows' ``.pxd`` files or a working C compiler the install still succeeds, and
the relay forwards in Python (its ``listening`` log line says which path runs). Everything else of the
project is in ``pyproject.toml``.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Builds what it can: an extension that fails to compile leaves one line and the Python path."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:  # noqa: BLE001 (any compiler failure: the install goes on without it)
            print(f"{ext.name} not built ({error}): the relay will forward in Python")


try:
    from Cython.Build import cythonize

    extensions = cythonize([Extension("call.relay_fast", ["call/relay_fast.pyx"])],
                           compiler_directives={"language_level": 3})
except Exception as error:  # noqa: BLE001 (no Cython, or picows' .pxd not found: the Python path serves)
    print(f"call.relay_fast not built ({error}): the relay will forward in Python")
    extensions = []

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
