"""AnalogAI-FL: multi-scale noise-aware training (MSNAT) on Flower, evaluated with aihwkit."""

__version__ = "0.1.0"
