from conftest import request_kwargs


def test_generate_returns_an_image_of_the_requested_size(server):
    from PIL import Image

    images, seed, details = server.client().predict(**request_kwargs(width=768, height=512), api_name="/generate")
    assert len(images) == 1
    assert Image.open(images[0]["image"]).size == (768, 512)
    assert seed == 1234
    assert details["timings"]["model_s"] > 0
