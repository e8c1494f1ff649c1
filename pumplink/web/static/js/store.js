// The devices as the console knows them. Each tile subscribes to its own device, so a live change
// re-renders that tile only; the list re-renders only when devices come or go.
export class DeviceStore {
  constructor() {
    this.devices = new Map();
    this.ids = [];
    this.subs = new Map();
    this.listSubs = new Set();
  }

  get(id) { return this.devices.get(id); }

  subscribe(id, fn) {
    let set = this.subs.get(id);
    if (!set) this.subs.set(id, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  subscribeList(fn) {
    this.listSubs.add(fn);
    return () => this.listSubs.delete(fn);
  }

  _notify(id) {
    const set = this.subs.get(id);
    if (set) for (const fn of set) fn(this.devices.get(id));
  }

  _notifyList() {
    for (const fn of this.listSubs) fn(this.ids);
  }

  // One device's full view (from GET /devices or /devices/{id}); unchanged views notify nobody.
  put(device) {
    const prev = this.devices.get(device.id);
    if (prev && JSON.stringify(prev) === JSON.stringify(device)) return false;
    this.devices.set(device.id, device);
    if (!prev) {
      this.ids = [...this.ids, device.id];
      this._notifyList();
    } else {
      this._notify(device.id);
    }
    return true;
  }

  // A live event's fields laid over the device's view, at once (the rest follows by a re-read).
  patch(id, fields) {
    const prev = this.devices.get(id);
    if (!prev) return false;
    this.devices.set(id, { ...prev, ...fields });
    this._notify(id);
    return true;
  }

  remove(id) {
    if (!this.devices.delete(id)) return;
    this.ids = this.ids.filter((x) => x !== id);
    this._notifyList();
  }

  replaceAll(list) {
    const seen = new Set();
    let membership = false;
    for (const device of list) {
      seen.add(device.id);
      if (!this.devices.has(device.id)) membership = true;
      const prev = this.devices.get(device.id);
      if (!prev || JSON.stringify(prev) !== JSON.stringify(device)) {
        this.devices.set(device.id, device);
        if (prev) this._notify(device.id);
      }
    }
    for (const id of [...this.devices.keys()]) {
      if (!seen.has(id)) { this.devices.delete(id); membership = true; }
    }
    if (membership || this.ids.length !== list.length) {
      this.ids = list.map((d) => d.id);
      this._notifyList();
    }
  }
}
