"""lorafair: does a low-rank fine-tune capture the shift its data asks for?"""

__version__ = "0.1.0"
