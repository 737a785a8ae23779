"""Packages: everything under tfcredit/, and the top-level gin_configs/ folder
mapped into the package as tfcredit/gin_configs (the rest is in setup.cfg)."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=['tfcredit', 'tfcredit.*']) +
      ['tfcredit.gin_configs'],
      package_dir={'tfcredit.gin_configs': 'gin_configs'})
