"""Build of nnunet_export._core: csrc/*.c against NumPy >= 2 and the system cJSON (pkg-config)."""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

kCjsonMissing = (
    "nnunet_export needs the cJSON library and its pkg-config file: install them with "
    "'apt-get install libcjson-dev pkg-config' (Debian/Ubuntu) and build again."
)
kDeflateMissing = (
    "nnunet_export needs the libdeflate library (CRC-32 of checkpoint entries) and its pkg-config "
    "file: install them with 'apt-get install libdeflate-dev pkg-config' (Debian/Ubuntu) and build again."
)
kCompilerMissing = (
    "nnunet_export needs a C compiler to build its C core: install one with "
    "'apt-get install build-essential' (Debian/Ubuntu) and build again."
)
kNumpyMissing = "nnunet_export builds against NumPy >= 2 headers: 'pip install \"numpy>=2\"' first."


def fail(message):
    sys.stderr.write("error: " + message + "\n")
    raise SystemExit(1)


def pkg_config(package, missing_message, *args):
    pkg_config_bin = shutil.which("pkg-config")
    if pkg_config_bin is None:
        fail(missing_message)
    result = subprocess.run([pkg_config_bin, *args, package], capture_output=True, text=True)
    if result.returncode != 0:
        fail(missing_message)
    return result.stdout.split()


def numpy_include():
    try:
        import numpy
    except ImportError:
        fail(kNumpyMissing)
    if int(numpy.__version__.split(".")[0]) < 2:
        fail(kNumpyMissing)
    return numpy.get_include()


def strict_flags():
    # Warnings are errors in CI and whenever a developer asks for it.
    flags = ["-std=c11", "-Wall", "-Wextra", "-Wshadow", "-fvisibility=hidden"]
    if os.environ.get("CI") or os.environ.get("NNUNET_EXPORT_WERROR"):
        flags.append("-Werror")
    flags += ["-fsanitize=" + s for s in sanitizers()]
    if sanitizers():
        # Recoverable UBSan findings would scroll by; make every one fatal (fuzz/, scripts/sanitize.sh).
        flags += ["-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-O1", "-g"]
    return flags


def sanitizers():
    # NNUNET_EXPORT_FUZZ=1 (clang only): libFuzzer coverage for atheris plus ASan/UBSan, see fuzz/.
    if os.environ.get("NNUNET_EXPORT_FUZZ"):
        return ["fuzzer-no-link,address,undefined"]
    if os.environ.get("NNUNET_EXPORT_SANITIZE"):
        return ["address,undefined"]
    return []


class BuildCore(build_ext):
    def build_extensions(self):
        compiler = self.compiler.compiler_so[0] if getattr(self.compiler, "compiler_so", None) else None
        if compiler is not None and shutil.which(compiler) is None:
            fail(kCompilerMissing)
        super().build_extensions()


def core_extension():
    cflags, libs = [], []
    for package, message in (("libcjson", kCjsonMissing), ("libdeflate", kDeflateMissing)):
        cflags += pkg_config(package, message, "--cflags")
        libs += pkg_config(package, message, "--libs")
    # -pthread: copying reads fill their arena with several threads (csrc/copy_out.c).
    link_args = ["-pthread"] + ["-fsanitize=" + s for s in sanitizers()]
    return Extension(
        "nnunet_export._core",
        sources=sorted(glob.glob(os.path.join("csrc", "*.c"))),
        depends=glob.glob(os.path.join("csrc", "*.h")),
        include_dirs=[numpy_include()] + [f[2:] for f in cflags if f.startswith("-I")],
        library_dirs=[f[2:] for f in libs if f.startswith("-L")],
        libraries=[f[2:] for f in libs if f.startswith("-l")],
        extra_compile_args=["-pthread"] + strict_flags() + [f for f in cflags if not f.startswith("-I")],
        extra_link_args=link_args,
    )


if sysconfig.get_config_var("CC") is None and shutil.which("cc") is None:
    fail(kCompilerMissing)

setup(ext_modules=[core_extension()], cmdclass={"build_ext": BuildCore})
