"""talkbench's own small world: a synthetic lip-reading corpus that can be made on any laptop.

Modules, one job each:

- :mod:`talkbench.synthetic.grammar`  the GRID-like sentence grammar (51 words);
- :mod:`talkbench.synthetic.speech`   espeak-ng through ctypes: 16 kHz speech with phoneme timings;
- :mod:`talkbench.synthetic.visemes`  phoneme -> viseme table, mouth parameters, coarticulation;
- :mod:`talkbench.synthetic.render`   faces (public-domain portrait + cartoon identities) with a drawn mouth;
- :mod:`talkbench.synthetic.corpus`   ``synthesize_corpus``: the corpus in LRS2 layout, in parallel.

Nothing is imported here so that ``import talkbench.synthetic`` stays cheap; the corpus needs the
optional packages ``espeakng-loader``, ``opencv-python-headless`` and ``scikit-image``.

Only the corpus lives here (bottom layer: it imports nothing of talkbench but :mod:`talkbench.media`). What is
built on it lives where its kind does: the mini observers of protocol ``mini`` in
:mod:`talkbench.observers.mini_lipreader` / :mod:`talkbench.observers.mini_syncnet`, their networks in
:mod:`talkbench.nets.mini_lipreader` / :mod:`talkbench.nets.mini_syncnet`, their training in
:mod:`talkbench.train.mini_observers`, and the bundled weights in ``talkbench/data/mini``.
"""
