"""Datasets: CIFAR-10/100 from a local archive, scikit-learn digits, toy densities, spirals.

Import the submodule you need (``neurode.app.data.cifar``, ``neurode.app.data.digits``, ...).
"""
