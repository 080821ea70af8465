from setuptools import find_packages, setup

setup(
    name="pyvmm",
    version="0.1.0",
    description="An x86 paravirtual hypervisor emulator in Python around Unicorn",
    packages=find_packages(include=["pyvmm", "pyvmm.*"]),
    python_requires=">=3.10",
    install_requires=[
        "unicorn==2.1.4",
        "capstone>=5.0",
        "pyelftools>=0.29",
        "cffi>=1.15",
    ],
    extras_require={"test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6"]},
    cffi_modules=["csrc/exitpath_build.py:ffibuilder", "csrc/dirtyscan_build.py:ffibuilder",
                   "csrc/unlz4_build.py:ffibuilder", "csrc/pagewalk_build.py:ffibuilder"],
    entry_points={"console_scripts": ["pyvmm = pyvmm.cli:main"]},
    include_package_data=True,
)
