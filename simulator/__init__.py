"""Simulators: card population, virtual cards behind PC/SC, phones, camera feeds, a broker launcher."""
