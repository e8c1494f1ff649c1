def test_health_and_admin_login(world):
    r = world.server.api().get("health")
    assert r.status_code == 200
    assert world.admin.get("me").json()["role"] == "admin"
