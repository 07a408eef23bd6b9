"""Generation: how the next word is chosen (`samplers`), captions from a CaptionModel (`decoding`), and answers
from a VQAModel (`answering`), each compiled once per backend."""
