"""Package discovery for the one import namespace ``incall_sms``.

The repository keeps the product's top-level folders (``pipeline/``, ``processors/``,
``media/``) next to the framework-free core (``incall_sms/``); installed, they are the
subpackages ``incall_sms.pipeline``, ``incall_sms.processors`` and ``incall_sms.media``.
Every package under each folder is discovered (never listed by hand), so a new subpackage
cannot be left out of the wheel. Everything else lives in ``pyproject.toml``.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "incall_sms": "incall_sms",
    "incall_sms.pipeline": "pipeline",
    "incall_sms.processors": "processors",
    "incall_sms.media": "media",
}

packages = []
for name, folder in FOLDERS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=FOLDERS)
