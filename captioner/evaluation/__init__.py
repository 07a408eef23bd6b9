"""Evaluation: BLEU (nltk), the COCO metrics (pycocoevalcap) and VQA accuracy (`metrics`); decoding or answering a
split and scoring it (`evaluate`)."""
