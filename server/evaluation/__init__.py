"""Measuring the classifier: embed labelled images, classify them as the server does
(`indexer.answer`), and report accuracy, calibration and decision bands (`nearcat eval`).

It sits above both `embedder/` (the model) and `indexer/` (the scoring), as the server does.
"""
