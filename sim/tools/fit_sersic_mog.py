import math, random
def sersic_b(n): # Ciotti & Bertin
    return 2*n-1/3+4/(405*n)+46/(25515*n*n)
def fit(n, K, rmax, iters=3000, seed=1):
    b=sersic_b(n)
    rs=[ (i+0.5)*rmax/4000 for i in range(4000)]
    # normalised sersic, r_e=1: total = 2pi n e^b b^-2n Gamma(2n)
    tot=2*math.pi*n*math.exp(b)*b**(-2*n)*math.gamma(2*n)
    S=[math.exp(-b*(r**(1/n)-1))/tot for r in rs]
    w=[r/max(s,1e-12)*(rmax/4000) for r,s in zip(rs,S)]
    def solve(v):
        G=[[1/(2*math.pi*vk)*math.exp(-0.5*r*r/vk) for r in rs] for vk in v]
        a=[1.0/K]*K
        # normal equations
        A=[[sum(w[i]*G[k][i]*G[l][i] for i in range(0,4000,4)) for l in range(K)] for k in range(K)]
        bb=[sum(w[i]*G[k][i]*S[i] for i in range(0,4000,4)) for k in range(K)]
        for _ in range(500):
            for k in range(K):
                r_=bb[k]-sum(A[k][l]*a[l] for l in range(K) if l!=k)
                a[k]=max(0.0,r_/A[k][k])
        err=sum(w[i]*(sum(a[k]*G[k][i] for k in range(K))-S[i])**2 for i in range(0,4000,4))
        return a,err
    rnd=random.Random(seed)
    lv=[math.log(1e-3 if n>2 else 1e-2)+ (math.log(rmax*rmax/4)-math.log(1e-3 if n>2 else 1e-2))*k/(K-1) for k in range(K)]
    a,e=solve([math.exp(x) for x in lv])
    step=0.3
    for it in range(iters):
        cand=[x+rnd.gauss(0,step) for x in lv]
        cand.sort()
        a2,e2=solve([math.exp(x) for x in cand])
        if e2<e: lv,a,e=cand,a2,e2
        if it%200==199: step*=0.7
    v=[math.exp(x) for x in lv]
    def encl(R): return sum(ak*(1-math.exp(-0.5*R*R/vk)) for ak,vk in zip(a,v))
    def prof(r): return sum(ak/(2*math.pi*vk)*math.exp(-0.5*r*r/vk) for ak,vk in zip(a,v))
    print("n",n,"err",e,"sum",sum(a),"enc(1)",encl(1.0))
    for r in (0.05,0.1,0.3,0.5,1,2,3,4,6):
        s=math.exp(-b*(r**(1/n)-1))/tot
        print("   ",r, prof(r)/s)
    print("W=",[float("%.6e"%x) for x in a]); print("V=",[float("%.6e"%x) for x in v])
import sys
fit(float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
