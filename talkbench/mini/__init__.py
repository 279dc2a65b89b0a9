"""talkbench's own small world: a synthetic lip-reading corpus that can be made on any laptop.

Modules, one job each:

- :mod:`talkbench.mini.grammar`  the GRID-like sentence grammar (51 words);
- :mod:`talkbench.mini.speech`   espeak-ng through ctypes: 16 kHz speech with phoneme timings;
- :mod:`talkbench.mini.visemes`  phoneme -> viseme table, mouth parameters, coarticulation;
- :mod:`talkbench.mini.render`   faces (public-domain portrait + cartoon identities) with a drawn mouth;
- :mod:`talkbench.mini.corpus`   ``synthesize_corpus``: the corpus in LRS2 layout, in parallel.

Nothing is imported here so that ``import talkbench.mini`` stays cheap; the corpus needs the
optional packages ``espeakng-loader``, ``opencv-python-headless`` and ``scikit-image``.
"""
