"""A voice call carried by the streaming codec: everything between the microphone and the socket.

``wire`` is the packet and file format (no torch, no codec: the relay imports only it);
``sender`` and ``receiver`` turn audio into packets and a room's packets back into audio, with
the ``jitter`` buffer and ``concealment`` of lost frames; ``connection`` (with its ``outbox``),
``media`` and ``status`` are the parts of a call peer (``client.py``), ``rooms`` and ``threads``
the settings it shares with the relay and the benchmarks; ``sound_card``, ``resample``, ``wav``
and ``recording`` are where audio enters and leaves; ``filecodec`` writes a call's packets to a
file. Importing this package loads nothing.
"""
