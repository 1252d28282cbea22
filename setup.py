"""Builds lepton._core through CMake; all metadata lives in pyproject.toml.

Environment knobs:
  LEPTON_BUILD_DIR    CMake build directory (default: build/cmake), kept between builds.
  LEPTON_BUILD_TESTS  ON to build the GoogleTest suite in the same tree (default OFF).
  LEPTON_BUILD_TYPE   CMake build type (default Release).
  LEPTON_JOBS         parallel build jobs (default: CPU count).
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("LEPTON_BUILD_DIR", ROOT / "build" / "cmake"))
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_BUILD_TYPE={os.environ.get('LEPTON_BUILD_TYPE', 'Release')}",
            "-DLEPTON_BUILD_PYTHON=ON",
            f"-DLEPTON_BUILD_TESTS={os.environ.get('LEPTON_BUILD_TESTS', 'OFF')}",
            f"-DLEPTON_BUILD_BENCHMARKS={os.environ.get('LEPTON_BUILD_BENCHMARKS', 'OFF')}",
            f"-DLEPTON_PYTHON_OUTPUT_DIR={out_dir}",
            # The interpreter itself, not a venv's link to it: the build directory is shared by
            # every venv this checkout is installed into, and a venv may be deleted.
            f"-DPython3_EXECUTABLE={os.path.realpath(sys.executable)}",
        ]
        if subprocess.run(["ninja", "--version"], capture_output=True).returncode == 0:
            if not (build_dir / "CMakeCache.txt").exists():
                configure += ["-G", "Ninja"]
        subprocess.run(configure, check=True)
        jobs = os.environ.get("LEPTON_JOBS", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(ext_modules=[CMakeExtension("lepton._core")], cmdclass={"build_ext": CMakeBuild})
