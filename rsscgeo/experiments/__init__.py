"""Experiments: matrices of training runs, their results and the paper's figures beside them.

``config`` describes an experiment, ``plan`` expands it into training runs, ``runner``
trains what is not finished yet, ``published`` holds the paper's figures and ``report``
writes ``results.csv``, the Markdown table and the bar chart.
"""
