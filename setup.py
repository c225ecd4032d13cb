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
        "onnxruntime>=1.17",
        "onnxscript>=0.1",
        "pygame>=2.5",
        "imageio>=2.31",
        "imageio-ffmpeg>=0.4.9",
        "av>=12.0",
        "scikit-learn>=1.3",
    ],
    extras_require={
        "dev": ["pytest>=7.4", "pytest-timeout>=2.2"],
        "tensorrt": ["tensorrt>=10.0"],
    },
    entry_points={
        "console_scripts": [
            "carla-collect=carla_client.collect:main",
            "carla-train=training.train:main",
            "carla-evaluate-model=training.evaluate:main",
            "carla-export=perception.export:main",
            "carla-bench=perception.bench:main",
            "carla-drive=launch.drive:main",
            "carla-evaluate=launch.evaluate:main",
            "carla-quickstart=launch.quickstart:main",
            "carla-embedded-bench=carla_embedded.bench:main",
        ]
    },
)
