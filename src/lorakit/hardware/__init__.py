"""What the machine is and what it computes fastest, each in its own module.

``cpu`` reads the CPU's flags and cores, ``probes`` times the two things flags cannot tell,
``probe_cache`` keeps their answers per machine (or takes them pinned from the environment),
``threads`` sets how many threads compute and ``memory`` reports the peaks. What a training run
decides from them, "auto" by "auto", is ``lorakit.train.plan``'s.
"""
