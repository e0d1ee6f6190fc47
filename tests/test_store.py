"""The embedded Tiled server: several in one process must not lock each other out."""

from cdi_beamline.store import EmbeddedTiled


def test_second_embedded_server_in_process_keeps_the_first_usable(tiled_server, tmp_path):
    first = tiled_server.client()
    with EmbeddedTiled(tmp_path / "second") as second:
        assert second.api_key == tiled_server.api_key
        assert "CatalogOfBlueskyRuns" in {s.name for s in second.client().specs}
        # the session server still answers its own (new) clients after another started
        assert len(tiled_server.client()) == len(first)
    # and after the second server stopped, and restarted on its own port
    tiled_server.stop()
    tiled_server.start()
    assert len(tiled_server.client()) == len(first)
