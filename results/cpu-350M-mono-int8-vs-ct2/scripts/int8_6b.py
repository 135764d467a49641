import numpy as np, time, sys, resource, json
from bench.hardware import measure_cpu_bandwidth_gbps
bw = measure_cpu_bandwidth_gbps()
from engine import load
var = sys.argv[1] if len(sys.argv) > 1 else "6B-mono"
t=time.perf_counter(); g=load(f"random:{var}", dtype="int8", prefix_cache_bytes=0); load_s=time.perf_counter()-t
rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1e6
m=g.model
wbytes = sum(t.nbytes for l in m.layers for t in (l.qkv_w, l.out_w, l.fc_in_w, l.fc_out_w)) + m.lm_w.nbytes
allbytes = wbytes + m.wte.nbytes
ids=[int(i) for i in np.random.default_rng(1).integers(0,50000,int(sys.argv[2]) if len(sys.argv)>2 else 64)]
t=time.perf_counter(); lg,c=m.prefill(ids); pf=time.perf_counter()-t
tok=np.asarray([int(lg.argmax())]); ds=[]
for s in range(int(sys.argv[3]) if len(sys.argv)>3 else 12):
    t=time.perf_counter(); out,c=m.decode(tok,c); ds.append(time.perf_counter()-t); tok=np.asarray([int(out[0].argmax())])
bw2 = measure_cpu_bandwidth_gbps()
d=np.median(ds)*1e3
res=dict(variant=var, load_s=load_s, peak_rss_gb_after_load=rss_load, peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1e6,
 prompt_tokens=len(ids), prefill_s=pf, decode_ms_p50=d, decode_ms_min=min(ds)*1e3, decode_ms_all=[round(x*1e3,1) for x in ds],
 int8_bytes_read_per_token=wbytes, int8_bytes_all=allbytes, bandwidth_gbps_before=bw, bandwidth_gbps_after=bw2,
 floor_ms=wbytes/(max(bw,bw2)*1e9)*1e3)
res["pct_of_floor_p50"]=res["floor_ms"]/d*100
print(json.dumps(res))
